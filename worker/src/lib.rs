//! PyTI worker library.

pub mod pypidownload;
