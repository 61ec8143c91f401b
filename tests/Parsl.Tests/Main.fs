module Parsl.Tests.Main

open Expecto

let all =
    testList "Parsl" [
        KernelTests.tests
        KernelProperties.tests
        ShellTests.tests
        DeepResolverTests.tests
        AppTests.tests
        ProvidersLauncherTests.tests
        ProvidersSlurmTests.tests
        ProvidersSshTests.tests
        ProvidersErrorHandlerTests.tests
        ProvidersGridEngineTests.tests
        ProvidersBatchSamplesTests.tests
        ProvidersKubernetesTests.tests
    ]

[<EntryPoint>]
let main argv = runTestsWithCLIArgs [] argv all
