//! `graftnet-device` for the build host. The board packages build the same
//! program for their CPUs (`targets/rpi4`, `targets/rpi5`, `targets/jetson-orin`).

fn main() -> std::process::ExitCode {
    graftnet_device::main(graftnet_device::HOST)
}
