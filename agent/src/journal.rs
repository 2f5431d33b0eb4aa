//! Local job journal.
