//! QEMU microvm driver (to be written).
