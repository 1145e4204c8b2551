//! Validated VM resources: 1–8 vCPUs, 128–8192 MiB of memory.

use serde::{Deserialize, Serialize};

/// A resource value outside its allowed range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} must be between {min} and {max}, got {got}")]
pub struct RangeError {
    what: &'static str,
    min: u32,
    max: u32,
    got: i64,
}

macro_rules! ranged {
    ($name:ident, $what:literal, $min:literal, $max:literal) => {
        #[doc = concat!("Number of ", $what, ", ", stringify!($min), " to ", stringify!($max), ".")]
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(try_from = "i64", into = "u32")]
        pub struct $name(u32);

        impl $name {
            /// Smallest allowed value.
            pub const MIN: u32 = $min;
            /// Largest allowed value.
            pub const MAX: u32 = $max;

            /// The value.
            pub fn get(self) -> u32 {
                self.0
            }
        }

        impl TryFrom<i64> for $name {
            type Error = RangeError;
            fn try_from(v: i64) -> Result<Self, RangeError> {
                match u32::try_from(v) {
                    Ok(x) if (Self::MIN..=Self::MAX).contains(&x) => Ok(Self(x)),
                    _ => Err(RangeError {
                        what: $what,
                        min: $min,
                        max: $max,
                        got: v,
                    }),
                }
            }
        }

        impl TryFrom<u32> for $name {
            type Error = RangeError;
            fn try_from(v: u32) -> Result<Self, RangeError> {
                Self::try_from(i64::from(v))
            }
        }

        impl From<$name> for u32 {
            fn from(v: $name) -> u32 {
                v.0
            }
        }
    };
}

ranged!(Vcpus, "vcpus", 1, 8);
ranged!(MemoryMib, "memory (MiB)", 128, 8192);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_enforced() {
        assert_eq!(Vcpus::try_from(1u32).map(Vcpus::get), Ok(1));
        assert_eq!(Vcpus::try_from(8u32).map(Vcpus::get), Ok(8));
        assert!(Vcpus::try_from(0u32).is_err());
        assert!(Vcpus::try_from(9u32).is_err());
        assert!(MemoryMib::try_from(127i64).is_err());
        assert!(MemoryMib::try_from(-1i64).is_err());
        assert!(MemoryMib::try_from(8193u32).is_err());
        let err = MemoryMib::try_from(64u32).unwrap_err().to_string();
        assert_eq!(err, "memory (MiB) must be between 128 and 8192, got 64");
        let m: MemoryMib = serde_json::from_str("512").unwrap();
        assert_eq!(m.get(), 512);
        assert!(serde_json::from_str::<Vcpus>("12").is_err());
    }
}
