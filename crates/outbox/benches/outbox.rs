//! Outbox benchmark (filled in below).
fn main() {}
