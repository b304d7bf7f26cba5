/* MKL's answer to "is this an Intel CPU?", for lmsuite.blas.

   MKL, PyTorch's BLAS on x86-64, runs its tuned matrix products only where this function of its
   own says yes, and a generic path elsewhere. Loaded into the process's global symbol scope
   before PyTorch, this definition is the one MKL's calls bind to. MKL still chooses among its
   kernels by the instruction sets the CPU reports (lmsuite loads this only on CPUs with AVX2 and
   FMA). `lmsuite_mkl_asked` says whether MKL called it, that is, whether it took effect.
*/
static volatile int asked;

int mkl_serv_intel_cpu_true(void) {
    asked = 1;
    return 1;
}

int lmsuite_mkl_asked(void) { return asked; }
