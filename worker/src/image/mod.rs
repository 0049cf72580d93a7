//! Guest image builder.
