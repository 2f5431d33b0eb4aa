//! vesemir controller library.
pub mod inventory;
