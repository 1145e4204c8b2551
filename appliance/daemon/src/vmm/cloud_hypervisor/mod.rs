//! Cloud Hypervisor driver (to be written).
