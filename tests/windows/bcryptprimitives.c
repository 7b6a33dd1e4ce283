/*
 * Test-only stand-in for bcryptprimitives.dll under Wine (tests/windows.rs), never shipped.
 *
 * Rust's standard library (1.78+) takes its random bytes from ProcessPrng in
 * bcryptprimitives.dll, which Windows 10+ has and Wine 8 lacks, so any Rust DLL fails to load
 * there. This DLL, placed next to the test's executables (and preferred through
 * WINEDLLOVERRIDES=bcryptprimitives=n,b), exports ProcessPrng on top of RtlGenRandom
 * (advapi32's SystemFunction036), which Wine implements.
 *
 * Build: x86_64-w64-mingw32-gcc -shared -O1 -o bcryptprimitives.dll bcryptprimitives.c
 */
#include <windows.h>

/* RtlGenRandom's real name: ntsecapi.h only declares it through a macro. */
__declspec(dllimport) BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

/* Same contract as Windows' ProcessPrng: fills the whole buffer and always returns TRUE. */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x10000000u ? 0x10000000u : (ULONG)len;
        if (!SystemFunction036(data, chunk)) {
            /* Nothing sensible to return: Rust's std aborts when randomness is unavailable. */
            ExitProcess(70);
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
