//! Writes the bundled demo messages in `examples/messages/`: Tuya messages really encrypted
//! and signed with the demo key below, and Alibaba and Huawei bodies as their clouds send them.
//!
//! Run from the repository root: `cargo run -p iotrules --example seal_demo_messages`.
//! The output is deterministic (fixed nonces and times), so re-running it changes nothing.

use std::path::Path;

use iotrules::dialect::tuya::{Keys, Mode};

/// The demo project's credentials. Not a real Tuya project: safe to publish.
const DEMO_ACCESS_ID: &str = "demoaccessid0000iotr";
const DEMO_ACCESS_KEY: &str = "DEMOkey-iotrules-0000-not-a-real-secret";

fn main() -> std::io::Result<()> {
    let dir = Path::new("examples/messages");
    std::fs::create_dir_all(dir)?;
    let keys = Keys::new(DEMO_ACCESS_ID, DEMO_ACCESS_KEY).expect("the demo key is 24+ characters");
    let t = 1_763_884_800_000; // 2025-11-23T08:00:00Z

    let status = r#"{"dataId":"demo-0001","devId":"vdevo-hallway-lamp","productKey":"keyLamp01","status":[{"code":"switch_led","value":true,"t":1763884799500,"1":"true"},{"code":"bright_value_v2","value":764,"t":1763884799500,"3":"764"},{"code":"work_mode","value":"white","t":1763884799500,"2":"white"}]}"#;
    let (payload, _) = keys.seal_iot_core(4, t, status.as_bytes(), Mode::Ecb, [0; 12]);
    std::fs::write(dir.join("tuya-status-ecb.json"), payload)?;

    let pir = r#"{"dataId":"demo-0002","devId":"vdevo-hallway-pir","productKey":"keyPir001","status":[{"code":"pir","value":"pir","t":1763884800100,"1":"pir"},{"code":"battery_percentage","value":87,"t":1763884800100,"4":"87"}]}"#;
    let (payload, _) = keys.seal_iot_core(4, t + 100, pir.as_bytes(), Mode::Gcm, *b"demo-nonce-1");
    std::fs::write(dir.join("tuya-status-gcm.json"), payload)?;

    let online = r#"{"bizCode":"online","bizData":{"time":1763884800200,"uid":"demo-user"},"devId":"vdevo-hallway-pir","productKey":"keyPir001","ts":1763884800200,"uuid":"demo-uuid-pir"}"#;
    let (payload, _) =
        keys.seal_iot_core(20, t + 200, online.as_bytes(), Mode::Gcm, *b"demo-nonce-2");
    std::fs::write(dir.join("tuya-online-gcm.json"), payload)?;

    let business = r#"{"bizCode":"device","eventType":"dp_report","data":{"devId":"demo-socket-1","productId":"demoSocketProduct","dataId":"demo-0003","namespace":"demo-namespace","status":[{"code":"switch_1","value":"true","time":1763884800300}]}}"#;
    std::fs::write(
        dir.join("tuya-business-dp-report.json"),
        keys.seal_business(t + 300, business.as_bytes()),
    )?;

    std::fs::write(
        dir.join("alibaba-property-post.json"),
        r#"{"iotId":"demoIotId0001","requestId":"101","productKey":"a1DemoPk","deviceName":"thermostat-1","gmtCreate":1763884800400,"deviceType":"Thermostat","items":{"CurrentTemperature":{"value":23.5,"time":1763884800400},"PowerSwitch":{"value":1,"time":1763884800400}},"checkFailedData":{}}"#,
    )?;
    std::fs::write(
        dir.join("alibaba-status.json"),
        r#"{"status":"offline","iotId":"demoIotId0001","productKey":"a1DemoPk","deviceName":"thermostat-1","time":"2025-11-23 16:00:00.500","utcTime":"2025-11-23T08:00:00.500Z","lastTime":"2025-11-23 15:59:00.000","utcLastTime":"2025-11-23T07:59:00.000Z","clientIp":"192.0.2.10"}"#,
    )?;
    std::fs::write(
        dir.join("huawei-property-report.json"),
        r#"{"resource":"device.property","event":"report","event_time":"20251123T080000Z","request_id":"demo-req-0001","notify_data":{"header":{"app_id":"demoApp","device_id":"demo_product_meter-1","node_id":"meter-1","product_id":"demo_product","gateway_id":"demo_product_meter-1"},"body":{"services":[{"service_id":"Energy","properties":{"power_w":1210.5,"voltage_v":229},"event_time":"20251123T080000Z"}]}}}"#,
    )?;
    std::fs::write(
        dir.join("huawei-legacy-command.json"),
        r#"{"msgType":"cloudReq","serviceId":"Switch","cmd":"SET_SWITCH","paras":{"on":true},"mid":42}"#,
    )?;
    println!("wrote the demo messages to {}", dir.display());
    Ok(())
}
