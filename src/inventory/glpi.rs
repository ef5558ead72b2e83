//! Placeholder until the GLPI conversion lands (branch inv).
use super::Inventory;

pub fn to_glpi(inv: &Inventory, deviceid: &str) -> serde_json::Value {
    serde_json::json!({"deviceid": deviceid, "content": {"versionclient": "bootcast", "hardware": {"uuid": inv.system.uuid}}})
}
