module Parsl.Dashboard.Tests.Main

open Expecto

[<EntryPoint>]
let main argv = runTestsWithCLIArgs [] argv DashboardTests.tests
