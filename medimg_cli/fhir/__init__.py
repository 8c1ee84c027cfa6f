"""FHIR R4 client: read, search with Bundle paging, create; readable renderings of data types.

`client` talks HTTP through the shared layer (`medimg_cli.dicomweb.client`) and
turns OperationOutcomes into medimg errors; `model` turns HumanName, Identifier,
CodeableConcept and references into text for tables. Nothing here imports the CLI.
"""
