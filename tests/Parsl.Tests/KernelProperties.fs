module Parsl.Tests.KernelProperties

open Expecto

let tests = testList "KernelProperties" []
