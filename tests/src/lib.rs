//! The end-to-end tests are in `tests/`; their harness (processes, free
//! ports, the local fleet, HAProxy, goiardi, Chromium) is the
//! `vesemir-testkit` crate in `testkit/`.
