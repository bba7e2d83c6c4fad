//! A profiling harness for the Tuya decode hot path: decodes one sealed status message N times
//! (default 20 000), AES-ECB or, with a second argument `gcm`, AES-GCM, for
//! `valgrind --tool=callgrind` or `perf`:
//!
//!     cargo build --release -p iotrules --example prof_decode
//!     valgrind --tool=callgrind target/release/examples/prof_decode 20000 [gcm]
//!
//! (The criterion bench `decode` gives the time; this gives where it goes.)

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use iotrules::dialect::tuya::{Decoder, Keys, Mode};
use iotrules::dialect::{RawMessage, SignMode};
const STATUS: &str = r#"{"dataId":"16QmtsL4F28GzL2cEpVZzAQl","devId":"vdevxJ4SXRVxfCQG","productKey":"gXkH1zxF","status":[{"2":"white","code":"work_mode","t":1631545543536,"value":"white"},{"3":"764","code":"bright_value_v2","t":1631545543536,"value":764},{"code":"temp_current","t":1631545543536,"value":23.5,"4":"23.5"}]}"#;
fn main() {
    let keys = Keys::new("benchAccessId", "benchKEY0123456789abcdefghijklmn").unwrap();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20000);
    let mode = match std::env::args().nth(2).as_deref() {
        Some("gcm") => Mode::Gcm,
        _ => Mode::Ecb,
    };
    let (sealed, _) = keys.seal_iot_core(4, 1631545543537, STATUS.as_bytes(), mode, [7; 12]);
    let d = Decoder::new(keys, SignMode::Enforce);
    let props = [("em".to_owned(), mode.as_str().to_owned())];
    let m = RawMessage::new("bench", sealed.as_bytes()).with_properties(&props);
    let start = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(d.decode(std::hint::black_box(&m)).unwrap());
    }
    eprintln!("{:.0}/s", n as f64 / start.elapsed().as_secs_f64());
}
