/* Allocate and touch argv[1] MiB, 1 MiB at a time, reporting progress on stdout.
 * Exits 0 and prints "done" if everything was allocated; exits 2 if malloc fails. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 512;
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("start\n");
    for (long i = 0; i < mib; i++) {
        char *p = malloc(1 << 20);
        if (!p) {
            printf("malloc failed after %ld MiB\n", i);
            return 2;
        }
        memset(p, 0x5a, 1 << 20);
    }
    printf("done\n");
    return 0;
}
