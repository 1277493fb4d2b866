//! Ferry client SDK (in progress).
