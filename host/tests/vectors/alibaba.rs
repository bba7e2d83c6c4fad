//! Checks of the alibaba vector files (filled in with the alibaba dialect).
