#!/usr/bin/env bash
# Open MPI and MPICH for the MPIExecutor tests: Debian's openmpi-bin + libopenmpi-dev (mpiexec, mpicc.openmpi) and
# mpich (mpiexec.mpich, mpicc.mpich), with a C compiler for the small MPI program the tests compile.
# Idempotent. Prints one line on stdout: READY openmpi=MPIEXEC mpich=MPIEXEC; details go to stderr.
# Open MPI refuses root unless OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1, and more ranks than cores
# unless OMPI_MCA_rmaps_base_oversubscribe=1: the tests set those in the environment they run MPI with.
set -uo pipefail
. "$(dirname "$0")/common.sh"
require_root_debian
apt_install openmpi-bin libopenmpi-dev mpich libmpich-dev gcc libc6-dev

openmpi=$(command -v mpiexec.openmpi) || die "openmpi-bin installed no mpiexec.openmpi"
mpich=$(command -v mpiexec.mpich) || die "mpich installed no mpiexec.mpich"
command -v mpicc.openmpi >/dev/null || die "libopenmpi-dev installed no mpicc.openmpi"
command -v mpicc.mpich >/dev/null || die "libmpich-dev installed no mpicc.mpich"
echo "READY openmpi=$openmpi mpich=$mpich"
