//! Signed `/files` URLs (owned by the files helper; see module `files`).
