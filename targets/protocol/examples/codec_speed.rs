//! Framing cost of a 224x224x3 int8 `Infer` request on this machine:
//! `graftnet_protocol::encode` / decode against postcard's byte-by-byte
//! `to_slice_cobs` / `from_bytes_cobs`. `cargo run --release --example codec_speed`.

use std::time::Instant;

use graftnet_protocol::{decode_request, encode, Input, Request};

fn time(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..200 {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / 200.0
}

fn main() {
    let x: Vec<i8> = (0..150_528).map(|i| (i * 37 % 251) as i8).collect();
    let req = Request::Infer {
        tasks: heapless::Vec::new(),
        input: Input::I8(&x),
    };
    let (mut buf, mut copy) = (vec![0u8; 200_000], vec![0u8; 200_000]);
    let n = encode(&req, &mut buf).unwrap().len();
    assert_eq!(postcard::to_slice_cobs(&req, &mut copy).unwrap().len(), n);
    for _ in 0..3 {
        let enc = time(&mut || {
            std::hint::black_box(encode(&req, &mut buf).unwrap().len());
        });
        let enc_pc = time(&mut || {
            std::hint::black_box(postcard::to_slice_cobs(&req, &mut copy).unwrap().len());
        });
        let cp = time(&mut || copy[..n].copy_from_slice(&buf[..n]));
        let dec = time(&mut || {
            copy[..n].copy_from_slice(&buf[..n]);
            std::hint::black_box(decode_request(&mut copy[..n]).unwrap());
        }) - cp;
        let dec_pc = time(&mut || {
            copy[..n].copy_from_slice(&buf[..n]);
            std::hint::black_box(postcard::from_bytes_cobs::<Request>(&mut copy[..n]).unwrap());
        }) - cp;
        println!("{n}-byte frame: encode {enc:.1} µs (postcard to_slice_cobs {enc_pc:.1}), decode {dec:.1} µs (from_bytes_cobs {dec_pc:.1})");
    }
}
