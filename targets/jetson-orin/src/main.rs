//! `graftnet-device` for the NVIDIA Jetson Orin (Cortex-A78AE; dotprod).
//! Target, CPU and runner: `.cargo/config.toml`; the program: `targets/device`.

fn main() -> std::process::ExitCode {
    graftnet_device::main(graftnet_device::Board { name: "jetson-orin", cpu: "cortex-a78ae" })
}
