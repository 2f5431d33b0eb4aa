//! Start a real HAProxy with an admin socket.
