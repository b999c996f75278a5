//! Byte counts as spectra prints them.

/// Bytes in MiB, as the reports' tables print KV memory.
pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Bytes in MiB, or in KiB below one MiB, with the unit.
pub fn human_bytes(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", mib(bytes))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}
