//! Five-simulator check (placeholder).
