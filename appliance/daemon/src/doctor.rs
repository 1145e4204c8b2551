//! `lelantos doctor` (to be written).
