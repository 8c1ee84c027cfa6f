#compdef medimg

_medimg_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _MEDIMG_COMPLETE=complete_zsh medimg)
}

compdef _medimg_completion medimg
