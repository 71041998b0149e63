//! Tests of status computation.
