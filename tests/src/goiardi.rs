//! Start a real goiardi (Chef server) with authentication on.
