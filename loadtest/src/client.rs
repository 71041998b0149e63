//! A minimal streaming OpenAI client (placeholder).
