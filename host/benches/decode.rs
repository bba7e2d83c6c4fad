//! Decode throughput per envelope kind, one core: signature check, decryption, JSON parsing
//! and normalization into an `Event`, as a connector would run them per message.
//!
//! `cargo bench -p iotrules --bench decode`; criterion reports elements/s = events/s.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iotrules::dialect::tuya::{BusinessDecoder, Decoder, Keys, Mode};
use iotrules::dialect::{Dialect, RawMessage, SignMode, alibaba, huawei, json};
use std::hint::black_box;

/// The allocator of the `iotrules` binary, so the figures are the service's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "shared/tuya.rs"]
mod tuya_messages;
use tuya_messages::{BUSINESS, STATUS};

const ACCESS_KEY: &str = "benchKEY0123456789abcdefghijklmn";

const ALIBABA: &str = r#"{"iotId":"4z819VQHk6VSLmmBJfrf00107ee200","requestId":"2","productKey":"a1FlqIQ****","deviceName":"device1","gmtCreate":1510799670074,"deviceType":"Ammeter","items":{"Power":{"value":"on","time":1510799670074},"Position":{"time":1510292697470,"value":{"latitude":39.9,"longitude":116.38}}},"checkFailedData":{}}"#;

/// A zigbee2mqtt light's state, as a generic `mqtt` link receives it.
const ZIGBEE: &str = r#"{"state":"ON","brightness":128,"color_temp":370,"linkquality":87,"update":{"state":"idle"},"color":{"x":0.3,"y":0.32}}"#;

const HUAWEI: &str = r#"{"resource":"device.property","event":"report","event_time":"20151212T121212Z","request_id":"3fe58d5e-8697-4849-a165-7db128f7e776","notify_data":{"header":{"app_id":"d4922d8a-6c8e-4396-852c-164aefa6638f","device_id":"d4922d8a-6c8e-4396-852c-164aefa6638f","node_id":"ABC123456789","product_id":"ABC123456789","gateway_id":"d4922d8a-6c8e-4396-852c-164aefa6638f"},"body":{"services":[{"service_id":"Battery","properties":{"batteryLevel":57,"voltage":3.7},"event_time":"20151212T121212Z"}]}}}"#;

fn bench(
    c: &mut Criterion,
    name: &str,
    dialect: &Dialect,
    payload: &[u8],
    properties: &[(String, String)],
) {
    let message = RawMessage::new("bench", payload).with_properties(properties);
    if let Err(e) = dialect.decode(&message) {
        panic!("{name}: the benchmark message does not decode: {e}");
    }
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| b.iter(|| dialect.decode(black_box(&message))));
    group.finish();
}

fn decode(c: &mut Criterion) {
    let keys = Keys::new("benchAccessId", ACCESS_KEY).expect("bench key");
    let tuya = Dialect::Tuya(Decoder::new(keys.clone(), SignMode::Enforce));

    let (ecb, _) = keys.seal_iot_core(4, 1631545543537, STATUS.as_bytes(), Mode::Ecb, [0; 12]);
    bench(
        c,
        "tuya-ecb",
        &tuya,
        ecb.as_bytes(),
        &[("em".into(), "aes_ecb".into())],
    );

    let (gcm, _) = keys.seal_iot_core(4, 1631545543537, STATUS.as_bytes(), Mode::Gcm, [7; 12]);
    bench(
        c,
        "tuya-gcm",
        &tuya,
        gcm.as_bytes(),
        &[("em".into(), "aes_gcm".into())],
    );

    let business = Dialect::TuyaBusiness(BusinessDecoder::new(keys.clone(), SignMode::Enforce));
    bench(
        c,
        "tuya-business",
        &business,
        keys.seal_business(1631545543636, BUSINESS.as_bytes())
            .as_bytes(),
        &[],
    );

    let alibaba_props = [
        (
            "topic".to_owned(),
            "/a1FlqIQ****/device1/thing/event/property/post".to_owned(),
        ),
        ("messageId".to_owned(), "1712345678901234567".to_owned()),
        ("generateTime".to_owned(), "1510799670074".to_owned()),
    ];
    bench(
        c,
        "alibaba-amqp",
        &Dialect::Alibaba(alibaba::Decoder::new(false)),
        ALIBABA.as_bytes(),
        &alibaba_props,
    );

    bench(
        c,
        "huawei-amqp",
        &Dialect::Huawei(huawei::Decoder::new()),
        HUAWEI.as_bytes(),
        &[],
    );

    let template = json::TopicTemplate::parse("zigbee2mqtt/{device}").expect("template");
    bench(
        c,
        "mqtt-json",
        &Dialect::Json(json::Decoder::new(template)),
        ZIGBEE.as_bytes(),
        &[("topic".to_owned(), "zigbee2mqtt/lamp-1".to_owned())],
    );
}

criterion_group!(benches, decode);
criterion_main!(benches);
