//! Inventory: where an application's VMs are found (Chef server search or a static file).
