int kiln_not_a_kernel;
