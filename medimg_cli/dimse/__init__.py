"""DICOM DIMSE over pynetdicom: association setup and diagnosis, echo, find."""
