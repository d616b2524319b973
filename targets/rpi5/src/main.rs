//! `graftnet-device` for the Raspberry Pi 5 (BCM2712, 4x Cortex-A76; dotprod).
//! Target, CPU and runner: `.cargo/config.toml`; the program: `targets/device`.

fn main() -> std::process::ExitCode {
    graftnet_device::main(graftnet_device::Board { name: "rpi5", cpu: "cortex-a76" })
}
