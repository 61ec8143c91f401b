module Parsl.Tests.ShellTests

open Expecto

let tests = testList "ShellTests" []
