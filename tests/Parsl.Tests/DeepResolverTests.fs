module Parsl.Tests.DeepResolverTests

open Expecto

let tests = testList "DeepResolver" []
