//! Criterion benches of the SquashFS reader (filled in below).
fn main() {}
