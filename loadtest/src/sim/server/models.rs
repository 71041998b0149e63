//! The served model names and the LoRA adapters, as `/v1/models` lists them and as the `model`
//! field of a request resolves against them.
//!
//! The base model is served under every `--served-model-name`; adapters come from
//! `--lora-modules` and `/v1/load_lora_adapter`, each with a stable engine id. Lookups happen on
//! every request, so the adapter list sits behind a `parking_lot` read-write lock that writers
//! (adapter loads) hold only briefly.

use std::fmt::Write as _;

use parking_lot::RwLock;

use crate::sim::lora::LoraId;
use crate::sim::openai::{ApiError, json_string};

/// A LoRA adapter's card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraCard {
    pub name: String,
    pub path: String,
    pub id: LoraId,
}

#[derive(Debug)]
pub struct ModelRegistry {
    served: Vec<String>,
    root: String,
    max_model_len: usize,
    created: u64,
    loras: RwLock<(Vec<LoraCard>, LoraId)>,
}

/// The model a request resolved to: the name to echo in responses and its adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    pub name: String,
    pub lora: Option<LoraId>,
}

impl ModelRegistry {
    pub fn new(served: Vec<String>, root: String, max_model_len: usize, created: u64) -> Self {
        ModelRegistry {
            served,
            root,
            max_model_len,
            created,
            loras: RwLock::new((Vec::new(), 1)),
        }
    }

    pub fn primary(&self) -> &str {
        &self.served[0]
    }

    /// Resolves a request's `model` (absent = the first served name).
    pub fn resolve(&self, requested: Option<&str>) -> Result<ResolvedModel, ApiError> {
        let Some(name) = requested else {
            return Ok(ResolvedModel {
                name: self.primary().to_string(),
                lora: None,
            });
        };
        if self.served.iter().any(|served| served == name) {
            return Ok(ResolvedModel {
                name: name.to_string(),
                lora: None,
            });
        }
        self.loras
            .read()
            .0
            .iter()
            .find(|card| card.name == name)
            .map(|card| ResolvedModel {
                name: name.to_string(),
                lora: Some(card.id),
            })
            .ok_or_else(|| ApiError::model_not_found(name))
    }

    /// Registers an adapter; errors as vLLM's `/v1/load_lora_adapter` does.
    pub fn add_lora(&self, name: &str, path: &str) -> Result<LoraId, ApiError> {
        let mut guard = self.loras.write();
        if guard.0.iter().any(|card| card.name == name) {
            return Err(ApiError {
                status: 400,
                kind: "InvalidUserInput",
                message: format!("The lora adapter '{name}' has already been loaded."),
            });
        }
        let id = guard.1;
        guard.1 += 1;
        guard.0.push(LoraCard {
            name: name.to_string(),
            path: path.to_string(),
            id,
        });
        Ok(id)
    }

    /// Forgets an adapter; errors as vLLM's `/v1/unload_lora_adapter` does.
    pub fn remove_lora(&self, name: &str) -> Result<LoraId, ApiError> {
        let mut guard = self.loras.write();
        let at = guard
            .0
            .iter()
            .position(|card| card.name == name)
            .ok_or_else(|| ApiError {
                status: 404,
                kind: "NotFoundError",
                message: format!("The lora adapter '{name}' cannot be found."),
            })?;
        Ok(guard.0.remove(at).id)
    }

    /// Comma-joined adapter names for a list of ids (for `lora_requests_info`).
    pub fn lora_names(&self, ids: &[LoraId]) -> String {
        let guard = self.loras.read();
        let names: Vec<&str> = ids
            .iter()
            .filter_map(|id| guard.0.iter().find(|card| card.id == *id))
            .map(|card| card.name.as_str())
            .collect();
        names.join(",")
    }

    /// The `/v1/models` body.
    pub fn render(&self) -> String {
        let mut out = String::from("{\"object\":\"list\",\"data\":[");
        let mut first = true;
        let mut card = |id: &str, root: &str, parent: Option<&str>, max_len: Option<usize>| {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(
                out,
                "{{\"id\":{},\"object\":\"model\",\"created\":{},\"owned_by\":\"vllm\",\"root\":{},\"parent\":{},\"max_model_len\":{},\"permission\":[{{\"id\":\"modelperm-{:032x}\",\"object\":\"model_permission\",\"created\":{},\"allow_create_engine\":false,\"allow_sampling\":true,\"allow_logprobs\":true,\"allow_search_indices\":false,\"allow_view\":true,\"allow_fine_tuning\":false,\"organization\":\"*\",\"group\":null,\"is_blocking\":false}}]}}",
                json_string(id),
                self.created,
                json_string(root),
                parent.map_or("null".to_string(), json_string),
                max_len.map_or("null".to_string(), |n| n.to_string()),
                xxhash_rust::xxh3::xxh3_128(id.as_bytes()),
                self.created,
            );
        };
        for name in &self.served {
            card(name, &self.root, None, Some(self.max_model_len));
        }
        for lora in &self.loras.read().0 {
            card(&lora.name, &lora.path, Some(&self.served[0]), None);
        }
        out.push_str("]}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_list_base_and_adapters() {
        let registry =
            ModelRegistry::new(vec!["/model/qwen".into()], "/models/Qwen".into(), 32_768, 1);
        let id = registry.add_lora("travel", "/loras/travel").unwrap();
        assert_eq!(registry.add_lora("travel", "/x").unwrap_err().status, 400);
        let body: serde_json::Value = serde_json::from_str(&registry.render()).unwrap();
        assert_eq!(body["data"][0]["id"], "/model/qwen");
        assert_eq!(body["data"][0]["root"], "/models/Qwen");
        assert_eq!(body["data"][0]["owned_by"], "vllm");
        assert_eq!(body["data"][1]["parent"], "/model/qwen");
        assert_eq!(body["data"][1]["max_model_len"], serde_json::Value::Null);
        assert_eq!(registry.resolve(Some("travel")).unwrap().lora, Some(id));
        assert_eq!(registry.resolve(Some("nope")).unwrap_err().status, 404);
        assert_eq!(registry.remove_lora("travel").unwrap(), id);
        assert_eq!(registry.remove_lora("travel").unwrap_err().status, 404);
    }
}
