/* targets/icount-plugin.c: a qemu TCG plugin that counts executed guest
 * instructions (any ISA, system or user mode). With mark=ADDR (hex), it
 * prints the running count whenever the block starting at ADDR executes;
 * the kernel self-test firmware calls graftnet_bench_mark() right before and
 * after each timed inference, so the differences are per-inference counts.
 * Instruction counts only: not cycles, not silicon time.
 *
 * Build against the qemu-plugin.h of the qemu in use (Debian 12: qemu 7.2,
 * plugin API 1; `apt-get source qemu` has it in include/qemu/):
 *   gcc -shared -fPIC -O2 -I DIR_WITH_qemu-plugin.h \
 *       -o icount-plugin.so targets/icount-plugin.c
 * Run:
 *   E=targets/cortex-m4/target/thumbv7em-none-eabihf/release/graftnet-cortex-m4-kernels
 *   qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic \
 *       -semihosting-config enable=on,target=native \
 *       -plugin ./icount-plugin.so,mark=$(llvm-nm $E | awk '/graftnet_bench_mark/ {print $1}') -kernel $E
 * Output on stderr: "icount: mark N" per call, "icount: total N" at exit.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;
static uint64_t count;
static uint64_t mark = UINT64_MAX;

static void on_mark(unsigned int vcpu, void *ud)
{
    fprintf(stderr, "icount: mark %" PRIu64 "\n", count);
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    if ((qemu_plugin_tb_vaddr(tb) & ~1ull) == (mark & ~1ull)) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_mark, QEMU_PLUGIN_CB_NO_REGS, NULL);
    }
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &count, n);
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    fprintf(stderr, "icount: total %" PRIu64 "\n", count);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "mark=", 5) == 0) {
            mark = strtoull(argv[i] + 5, NULL, 16);
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
