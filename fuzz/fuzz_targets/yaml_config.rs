//! Configuration files: parse and build a snapshot. Nothing may panic; problems are reported.
#![no_main]

use gateway::config::ObjectSet;
use gateway::snapshot::{BuildOptions, build};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut objects = ObjectSet::default();
    let _ = objects.add_yaml(text, std::path::Path::new("fuzz.yaml"));
    let registry = plugins_registry();
    let options = BuildOptions {
        controller_name: "inference-gateway.dev/controller",
        registry: &registry,
        default_request_timeout: None,
        picker: &gateway::epp::ClientSettings::default(),
        listeners_required: true,
    };
    let _ = build(&objects, &options, None);
});

fn plugins_registry() -> gateway::plugins::Registry {
    gateway::plugins::Registry::with_builtins()
}
