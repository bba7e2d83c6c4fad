//! Checks of the huawei vector files (filled in with the huawei dialect).
