//! Playbook runner.
