//! HAProxy runtime API client (admin socket).
