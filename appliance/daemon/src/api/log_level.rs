//! E2B's log levels, lowest first, as the sandbox logs and the template
//! build status filter entries by them (`level=` keeps that level and above).

/// The rank of `level`; `None` when it is not one of E2B's four.
pub fn rank(level: &str) -> Option<u8> {
    match level {
        "debug" => Some(0),
        "info" => Some(1),
        "warn" => Some(2),
        "error" => Some(3),
        _ => None,
    }
}
