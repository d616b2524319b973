//! `graftnet-device` for the Raspberry Pi 4 (BCM2711, 4x Cortex-A72; no dotprod).
//! Target, CPU and runner: `.cargo/config.toml`; the program: `targets/device`.

fn main() -> std::process::ExitCode {
    graftnet_device::main(graftnet_device::Board { name: "rpi4", cpu: "cortex-a72" })
}
