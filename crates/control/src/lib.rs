//! Ferry control plane (in progress).
