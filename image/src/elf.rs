//! Just enough ELF reading to refuse an envd that would not run as init:
//! it must be an x86-64 executable with no program interpreter (static), so
//! it starts before anything else in the guest is known to work.

/// Why a file is not a static x86-64 ELF executable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not an ELF file at all.
    #[error("not an ELF file")]
    NotElf,
    /// ELF, but not 64-bit little-endian x86-64.
    #[error("not an x86-64 ELF executable")]
    WrongArch,
    /// Headers point outside the file.
    #[error("truncated ELF headers")]
    Truncated,
    /// It asks for a dynamic loader.
    #[error("dynamically linked (has a PT_INTERP program header); build it with crt-static")]
    Dynamic,
}

const PT_INTERP: u32 = 3;
const EM_X86_64: u16 = 62;

fn u16_at(b: &[u8], off: usize) -> Result<u16, Error> {
    let s = b.get(off..off + 2).ok_or(Error::Truncated)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, Error> {
    let s = b.get(off..off + 4).ok_or(Error::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, Error> {
    let s = b.get(off..off + 8).ok_or(Error::Truncated)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// Checks that `bytes` is a statically linked x86-64 ELF executable.
pub fn check_static_x86_64(bytes: &[u8]) -> Result<(), Error> {
    if bytes.get(0..4) != Some(b"\x7fELF") {
        return Err(Error::NotElf);
    }
    // EI_CLASS = 2 (64-bit), EI_DATA = 1 (little-endian).
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err(Error::WrongArch);
    }
    if u16_at(bytes, 0x12)? != EM_X86_64 {
        return Err(Error::WrongArch);
    }
    let phoff = usize::try_from(u64_at(bytes, 0x20)?).map_err(|_| Error::Truncated)?;
    let phentsize = usize::from(u16_at(bytes, 0x36)?);
    let phnum = usize::from(u16_at(bytes, 0x38)?);
    for i in 0..phnum {
        let off = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(Error::Truncated)?;
        if u32_at(bytes, off)? == PT_INTERP {
            return Err(Error::Dynamic);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf() {
        assert_eq!(check_static_x86_64(b"#!/bin/sh\n"), Err(Error::NotElf));
    }

    #[test]
    fn rejects_truncated() {
        let mut b = b"\x7fELF\x02\x01\x01".to_vec();
        b.resize(0x13, 0);
        assert_eq!(check_static_x86_64(&b), Err(Error::Truncated));
    }

    /// The test binary itself is dynamically linked (default target), so it
    /// must be refused; this exercises the program-header walk on a real file.
    #[test]
    fn rejects_dynamic_executable() {
        let exe = std::env::current_exe().expect("current exe");
        let bytes = std::fs::read(exe).expect("read exe");
        let res = check_static_x86_64(&bytes);
        if cfg!(target_feature = "crt-static") {
            assert_eq!(res, Ok(()));
        } else {
            assert_eq!(res, Err(Error::Dynamic));
        }
    }

    #[test]
    fn accepts_minimal_static_header() {
        // 64-byte ELF header + one PT_LOAD program header.
        let mut b = vec![0u8; 64 + 56];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(check_static_x86_64(&b), Ok(()));
        b[64..68].copy_from_slice(&PT_INTERP.to_le_bytes());
        assert_eq!(check_static_x86_64(&b), Err(Error::Dynamic));
    }
}
