//! Errors flattened into one line where only a string travels on (an API
//! message, a sandbox's failure reason, a build log): the error and each of
//! its sources, `: `-joined, so the root cause is not lost.

/// `e` and its sources, `: `-joined.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    #[test]
    fn sources_follow_the_error() {
        let e = crate::vmm::Error::Prepare {
            vm: "v1".into(),
            what: "disk overlay (qemu-img)",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            super::chain(&e),
            "prepare disk overlay (qemu-img) for VM v1: entity not found"
        );
    }
}
