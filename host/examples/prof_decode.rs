//! A profiling harness for the Tuya decode hot path: decodes one sealed status message N times
//! (default 20 000), AES-ECB or, with a second argument `gcm`, AES-GCM, or with `business` a
//! Smart Business message (the `decode` bench's), for `valgrind --tool=callgrind` or `perf`:
//!
//!     cargo build --release -p iotrules --example prof_decode
//!     valgrind --tool=callgrind target/release/examples/prof_decode 20000 [gcm|business]
//!
//! (The criterion bench `decode` gives the time; this gives where it goes.)

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use iotrules::dialect::tuya::{BusinessDecoder, Decoder, Keys, Mode};
use iotrules::dialect::{Dialect, RawMessage, SignMode};
#[path = "../benches/shared/tuya.rs"]
mod tuya_messages;
use tuya_messages::{BUSINESS, STATUS};

fn main() {
    let keys = Keys::new("benchAccessId", "benchKEY0123456789abcdefghijklmn").unwrap();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20000);
    let (dialect, sealed, props) = match std::env::args().nth(2).as_deref() {
        Some("business") => (
            Dialect::TuyaBusiness(BusinessDecoder::new(keys.clone(), SignMode::Enforce)),
            keys.seal_business(1631545543636, BUSINESS.as_bytes()),
            vec![],
        ),
        other => {
            let mode = if other == Some("gcm") {
                Mode::Gcm
            } else {
                Mode::Ecb
            };
            let (sealed, _) =
                keys.seal_iot_core(4, 1631545543537, STATUS.as_bytes(), mode, [7; 12]);
            let props = vec![("em".to_owned(), mode.as_str().to_owned())];
            (
                Dialect::Tuya(Decoder::new(keys, SignMode::Enforce)),
                sealed,
                props,
            )
        }
    };
    let m = RawMessage::new("bench", sealed.as_bytes()).with_properties(&props);
    let start = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(dialect.decode(std::hint::black_box(&m)).unwrap());
    }
    eprintln!("{:.0}/s", n as f64 / start.elapsed().as_secs_f64());
}
