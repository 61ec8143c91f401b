module Parsl.Tests.KernelTests

open Expecto

let tests = testList "Kernel" []
