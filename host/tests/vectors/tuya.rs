//! Checks of the tuya vector files (filled in with the tuya dialect).
